"""Labeling pages outside the admin: the next task (answered from the keyboard), the review queue
and the lead's quality table, with live queue counts over the ``labeling`` topic
(static/sphere/labeling.js)."""
