"""The operations console: a web page over HTTPS for agents, health, alerts and performance (`opsmgr console`)."""
