"""Result files as typed records (run.json, results.json, cell.json) and their provenance."""
