from django.shortcuts import render

from .models import Item


def items(request):
    """One ORM query, one template render."""
    return render(request, "djbench/items.html", {"items": Item.objects.order_by("name")})
