"""Lightning glue: the LightningModule, DataModules and callbacks (the only Lightning imports)."""
