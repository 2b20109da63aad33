"""centrifugo-py: a Centrifugo v6 compatible real-time messaging server."""

VERSION = "6.9.1"
# What ConnectResult.version and `centrifugo version` report; SDKs only display it.
VERSION_STRING = f"{VERSION} OSS"
