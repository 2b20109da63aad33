"""Engine implementations of the Broker and PresenceManager contracts.

`memory` keeps everything in the process (single worker only); `redis` shares
channel state between workers and hosts. Nothing is imported here so that
picking the memory engine never pulls in the Redis client.
"""
