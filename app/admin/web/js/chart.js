// A small hand-written SVG line chart for the status page (no chart library: the UI loads
// nothing from outside the server). A LineChart draws one or more series of [t, value]
// points over a sliding time window ending now; a gap in the samples (a hidden tab stops the
// polling) breaks the line instead of drawing a straight segment across it.

const SVG = "http://www.w3.org/2000/svg";
const W = 420;
const H = 160;
const M = { left: 40, right: 10, top: 10, bottom: 22 };

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** The smallest of 1, 2, 5 × 10^k at or above v (the y axis top). */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * mag >= v) return m * mag;
  return 10 * mag;
}

export function formatValue(v) {
  if (!Number.isFinite(v)) return "–";
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

export class LineChart {
  /**
   * @param {{id: string, title: string, series: {key: string, label: string}[],
   *          windowSeconds?: number, maxGapSeconds?: number}} options
   * Series colours come from CSS (.series-0, .series-1, ...), so the theme owns them.
   */
  constructor({ id, title, series, windowSeconds = 300, maxGapSeconds = 10 }) {
    this.series = series;
    this.windowSeconds = windowSeconds;
    this.maxGapSeconds = maxGapSeconds;
    this.svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-title` });
    this.latest = series.map((serie, i) => {
      const value = document.createElement("strong");
      value.dataset.testid = `${id}-${serie.key}`;
      value.textContent = "–";
      const item = document.createElement("span");
      item.className = `legend series-${i}`;
      item.append(`${serie.label}: `, value);
      return item;
    });
    const caption = document.createElement("figcaption");
    const heading = document.createElement("span");
    heading.id = `${id}-title`;
    heading.className = "chart-title";
    heading.textContent = title;
    caption.append(heading, ...this.latest);
    this.element = document.createElement("figure");
    this.element.className = "chart";
    this.element.id = id;
    this.element.append(caption, this.svg);
  }

  /** samples: [{t: unix seconds, values: {key: number}}], oldest first; now: unix seconds. */
  update(samples, now) {
    const t0 = now - this.windowSeconds;
    const visible = samples.filter((p) => p.t >= t0);
    const max = niceMax(
      Math.max(0, ...visible.flatMap((p) => this.series.map((sr) => p.values[sr.key] ?? 0))),
    );
    const x = (t) => M.left + ((t - t0) / this.windowSeconds) * (W - M.left - M.right);
    const y = (v) => M.top + (1 - v / max) * (H - M.top - M.bottom);

    this.svg.replaceChildren();
    for (const frac of [0, 0.5, 1]) {
      const v = max * frac;
      this.svg.append(
        s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
        s("text", { class: "axis", x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, formatValue(v)),
      );
    }
    for (let ago = this.windowSeconds; ago >= 0; ago -= 60) {
      const label = ago === 0 ? "now" : `-${ago / 60}m`;
      // The end labels anchored inside, so they are not clipped at the edges.
      const anchor = ago === 0 ? "end" : ago === this.windowSeconds ? "start" : "middle";
      this.svg.append(
        s("text", { class: "axis", x: x(now - ago), y: H - 6, "text-anchor": anchor }, label),
      );
    }
    this.series.forEach((serie, i) => {
      let segment = [];
      const flush = () => {
        if (segment.length > 1) {
          this.svg.append(s("polyline", { class: `line series-${i}`, points: segment.join(" ") }));
        } else if (segment.length === 1) {
          const [cx, cy] = segment[0].split(",");
          this.svg.append(s("circle", { class: `dot series-${i}`, cx, cy, r: 2 }));
        }
        segment = [];
      };
      let last = null;
      for (const p of visible) {
        const v = p.values[serie.key];
        if (v === undefined || (last !== null && p.t - last > this.maxGapSeconds)) flush();
        if (v !== undefined) segment.push(`${x(p.t).toFixed(1)},${y(v).toFixed(1)}`);
        last = p.t;
      }
      flush();
      const lastValue = [...visible].reverse().find((p) => p.values[serie.key] !== undefined);
      this.latest[i].querySelector("strong").textContent = formatValue(lastValue?.values[serie.key]);
    });
  }
}
