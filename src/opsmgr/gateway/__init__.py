"""The gateway: relays agents from outside the trust boundary to management servers."""
