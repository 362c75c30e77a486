;; spin: a workflow that never ends. It burns fuel until the fuel limit stops it, or, with fuel
;; to spare, until the wall-time limit interrupts it.
(module
  (func (export "_start")
    (loop $forever
      (br $forever))))
