"""Creates djbench.sqlite3 (the Item table, by `migrate --run-syncdb`) and
fills it with 20 rows: python -m djbench.filldb (from the directory that
holds the djbench package)."""

import os

import django
from django.core.management import call_command

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djbench.settings")
django.setup()
call_command("migrate", run_syncdb=True, verbosity=0)

from djbench.models import Item  # noqa: E402  (needs django.setup())

Item.objects.all().delete()
Item.objects.bulk_create(Item(name="item %02d" % i, price_cents=100 * i + 99) for i in range(20))
