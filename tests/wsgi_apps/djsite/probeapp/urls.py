from django.urls import path

from . import views

urlpatterns = [
    path('', views.index, name='index'),
    path('login/', views.login, name='login'),
    path('upload/', views.upload, name='upload'),
    path('boom/', views.boom, name='boom'),
    path('stream/', views.stream, name='stream'),
]
