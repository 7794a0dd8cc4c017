from capsrobust.cli import entry_point

entry_point()
