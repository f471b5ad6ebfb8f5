"""The final stage: pick the best trial, Table 5 with post-processing, export, bootstrap promotion, the report."""
