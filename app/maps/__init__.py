"""Map subscriptions: keyed channel state with a change stream (centrifuge's MapBroker)."""
