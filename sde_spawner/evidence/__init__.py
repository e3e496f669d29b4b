"""``sde-admin evidence``: the Five Safes and SATRE evidence report, generated from a test run.

* :mod:`.catalogue` — what we claim (``catalogue.toml``): controls with their modules, settings
  and proving tests; the Five Safes and the SATRE statements they implement or do not meet.
* :mod:`.junit` — the results of a run, read from pytest's JUnit XML.
* :mod:`.facts` — live facts from a deployment (firewall chain, audit verify and checkpoint,
  agreements, opt-out lists), read only.
* :mod:`.report` — the pure join of the three into one report, and its JSON and HTML forms.
"""
