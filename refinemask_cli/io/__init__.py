"""Reading and writing files: COCO JSON and images. Everything user-facing is validated here."""
