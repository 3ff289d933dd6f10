"""The database: its models and schema versions, the writer's store, what each commit keeps up to
date (catalogue, hourly rollups), the reads behind replies and summaries, and database errors."""
