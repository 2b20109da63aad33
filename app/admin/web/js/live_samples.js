// The status charts' data: samples of admin/live turned into totals and per-second rates.
//
// admin/live gives per node (worker) its counts and two cumulative counters: publications
// broadcast to its local subscribers and messages delivered to its connections. A rate is the
// counter's delta between two successive samples of the same node uid over the server-clock
// time between them. A node seen for the first time, or whose counters went down (a restart
// under the same uid), adds no rate to that sample; a sample where no node has a rate carries
// no rate values at all (the chart leaves a gap rather than drawing a false zero).
// Pure: no DOM, no fetch, so a test can run it in the browser as it is.

export class LiveSamples {
  constructor(windowSeconds = 300) {
    this.windowSeconds = windowSeconds;
    /** [{t, values: {clients, subs, publications?, deliveries?}}], oldest first. */
    this.samples = [];
    this.previous = new Map(); // node uid → {t, publications, deliveries}
  }

  /** Add one admin/live answer ({time, nodes}); returns the sample it made. */
  add(live) {
    const t = live.time;
    const values = { clients: 0, subs: 0 };
    const rates = { publications: 0, deliveries: 0 };
    let rated = false;
    for (const node of live.nodes ?? []) {
      values.clients += node.num_clients ?? 0;
      values.subs += node.num_subs ?? 0;
      const prev = this.previous.get(node.uid);
      if (
        prev &&
        t > prev.t &&
        node.publications >= prev.publications &&
        node.deliveries >= prev.deliveries
      ) {
        rates.publications += (node.publications - prev.publications) / (t - prev.t);
        rates.deliveries += (node.deliveries - prev.deliveries) / (t - prev.t);
        rated = true;
      }
      this.previous.set(node.uid, {
        t,
        publications: node.publications,
        deliveries: node.deliveries,
      });
    }
    if (rated) Object.assign(values, rates);
    const sample = { t, values };
    this.samples.push(sample);
    const oldest = t - this.windowSeconds;
    while (this.samples.length && this.samples[0].t < oldest) this.samples.shift();
    // Forget nodes gone for longer than the window (workers replaced over days of uptime).
    for (const [uid, prev] of this.previous) if (prev.t < oldest) this.previous.delete(uid);
    return sample;
  }
}
