"""Personal data: keyed pseudonymization now; erasure and DP helpers later."""
