"""Metrics: error rates now; entropy-allocation metrics (CKA, NSE, PAI, CSAI) join here."""
