"""armor's own domains, each a plug-in (:class:`armor.plugins.Domain`) with its whole story in one folder.

``vision``: image datasets, corruption and acquisition-device shift, saliency and galleries, the digits and
Fashion-MNIST demos. ``tabular``: schemas with domain constraints, constrained attacks, ``cpgd-at``, recall
under attack, the breast-cancer and fraud demos. They are found through the ``armor.domains`` entry points in
``pyproject.toml``; the library never imports them.
"""
