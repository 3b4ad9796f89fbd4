"""Foundations every stage uses: errors, files, runtime (device, progress bars), statistics, text measures, telemetry."""
