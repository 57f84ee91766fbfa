"""The launcher behind ``demo_bert.py``: from its command line to the commands it runs.

    options    the ``pretraining`` / ``finetuning`` sub-commands, built from the training scripts' own
               parsers (one table maps each launcher option to the script flag it sets)
    inputs     checks of what the options name (data folders, model names, files), one line each
    topology   how many processes on which nodes, and the mpirun / torchrun command prefixes
    machine    facts about this machine (device, cores, mpirun), gathered once by ``demo_bert.main``
    plan       the scripts' argv for each phase or task, wrapped for the topology; the dry-run text

Nothing here imports torch: ``demo_bert.py -h`` and ``--dry_run`` stay fast. The commands are run by
``central.process_runner``. Nothing imports this package except ``demo_bert.py`` and the tests.
"""
