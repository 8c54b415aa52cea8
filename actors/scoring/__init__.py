"""Lead scoring: Customer Fit in real time, Likelihood to Buy in batch, a lead grade."""
