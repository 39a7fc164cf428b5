"""Speed, memory and parity figures of keras-glacier (printed and written to RESULTS.md; never asserted)."""
