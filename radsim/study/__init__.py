"""What-if studies: study files (`load`), one point's evaluation (`point`), sweeps (`sweep`), plots (`plots`) and the report page (`report`)."""
