"""Reading what users bring (files, folders, formats, the bundled samples) and writing outputs whole or not at all."""
