"""Services the tests start themselves (Synapse; more on other branches)."""
