"""One client connection: its state machine, command dispatch, subscriptions and timers.

Transport-agnostic: a transport feeds frames to `handle_frame` and provides
`write`/`close`. Rules follow Centrifugo's client protocol v2 (research §1, §3–§5):
connect first, 3501 for malformed input, errors as replies, disconnects as
close codes, recovery and positioning per subscription.

- `connection`: `Client` itself: frames in and out, command dispatch, closing;
- `connecting`: connect in named steps, the connection's expiry and refresh;
- `pings`: protocol pings and pongs;
- `subscribing`: subscribe, subscription expiry, server-side subscriptions, publication
  delivery;
- `permissions`: who may subscribe (token, proxy, namespace), read history and presence;
- `positioning`: a subscription's stream position and recovery;
- `commands`: the other channel commands (publish, presence, history, rpc, ...);
- `state`: the connection's phase, `ClientState` (every attribute the parts share,
  typed) and the per-subscription records.
"""

from app.client.connection import Client
from app.client.state import State, Subscription

__all__ = ["Client", "State", "Subscription"]
