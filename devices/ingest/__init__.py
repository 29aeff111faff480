"""What devices send besides heartbeats: prediction logs (``predictions``) and packages
(``uploads`` stores them, ``processing`` runs them through ``archive`` and a handler per kind)."""
