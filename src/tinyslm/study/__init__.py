"""The study grid: config and cells, and the runner that executes them."""
