"""The percale operator: the Installation resource, what it renders, and the kopf shell that applies it."""
