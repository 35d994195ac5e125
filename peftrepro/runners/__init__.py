"""Runners execute a resolved manifest somewhere (this process, a container) and write its record."""
