"""Simulated user, metrics and the evaluation protocols shared by training and evaluation."""
