"""Cloud providers: one interface (base), one implementation per cloud."""
