"""Shared poll (Centrifugo 6.8+): the server polls the backend once per channel for every
subscriber of a worker and delivers changed items as publications. `manager.py` is the
entry point (`SharedPollManager`, one per node); the rest are its parts."""
