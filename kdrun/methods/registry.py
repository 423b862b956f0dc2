"""The distillation-method registry: `method=<name>` picks an Objective class.

A method is built as Method(teacher, temperature, alpha, **options): `temperature` and `alpha` are
the root keys `T` and `alpha`, each method documents how it uses them.
"""

from kdrun.registry import Registry

METHODS: Registry = Registry("method")
