"""Where streams outlive the process: the ``StreamStore`` protocol (``base``), its SQLite
implementation (``sqlite``) and the choice by configuration (``factory``)."""
