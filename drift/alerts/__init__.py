"""Alerts on drift and fleet health: rules evaluated every minute (evaluate), their lifecycle
(services), and the transports that notify (transports/<kind>)."""
