"""Delivery: claim due deliveries, open their ciphertext, hand the password to the adapter."""
