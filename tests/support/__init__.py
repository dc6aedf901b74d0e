"""What tests share besides fixtures: paths, running a script, writing members, a browser."""
