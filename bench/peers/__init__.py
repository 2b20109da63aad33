"""The peers a user would pick instead of this server, measured against it in one run
(`python -m bench.peers`, bench/peers/stage.py; issue 23 target 5): Node.js socket.io with its
Redis adapter (bench/peers/socketio/), Django Channels with channels_redis (channels_site.py),
their publishers (publishers.py), beside the app, the raw aiohttp ceiling and python-socketio."""
