from django.urls import path

from console.jobs import views

urlpatterns = [
    path("", views.job_list_page, name="job-list"),
]
