"""Deployment: inference back-ends, temporal smoothing, colouring, frame sources, latency, the browser page."""
