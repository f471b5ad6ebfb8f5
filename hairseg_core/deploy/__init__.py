"""Deployment: inference back-ends, temporal smoothing, colouring, frame sources, the webcam loop, latency,
the browser page."""
