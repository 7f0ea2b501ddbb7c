"""The scenario of a run: its inputs, declared once (`schema`), and what they build and run (`run`)."""
