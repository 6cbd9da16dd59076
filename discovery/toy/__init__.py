"""Small models with known mechanisms: trained toy models shipped with circuitry, and planted circuits."""
