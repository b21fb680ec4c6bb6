"""The module panel's sections: the Qt side of ``VISTA3DSlicer.py``'s Widget, one file per section.

Each section binds its part of the .ui (``VISTA3DSlicer.ui``) to the module's Logic and to what
the user is asked. They run only inside Slicer (PythonQt's ``qt``, ``slicer.util`` dialogs) and
are imported only by the module file, never by ``VISTA3DSlicerLib``, which stays plain Python.

A section gets the module Widget as ``panel`` and uses only its ``ui``, ``logic``, ``parent``,
``parameters`` (the parameter node), ``runningJob`` and its status methods (``showProgress``,
``showError``, ``finishJob``, ``onJobFailed``, ``updateButtons``).
"""
