"""medclr benchmarks and studies, run as `python -m benchmarks.<name>`; see README.md."""
