"""medclr benchmarks and studies (python -m benchmarks.NAME); see README.md."""
