"""Small shared utilities: distributed helpers, atomic files, tables, seeding."""
