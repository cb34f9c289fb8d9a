"""Network programming with Python sockets: a workbook of runnable lessons.

Run ``python -m lessons`` for the table of lessons, and
``python -m lessons.NN_name`` for one lesson's demo.
"""
