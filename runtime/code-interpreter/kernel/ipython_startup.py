# Run by every Python kernel of the code interpreter at start-up (IPKernelApp.exec_files): the
# display formatters that give the E2B SDK its `data` (pandas DataFrames as columns) and `chart`
# (matplotlib figures as E2B chart data, extracted by E2B's own `e2b-charts` package) MIME types,
# `e2b/data` and `e2b/chart`. Importing pandas and matplotlib here also warms the kernel, so the
# first cell that uses them is fast. Everything lives inside one function so that nothing but
# the user's own names is left in the namespace.


def _e2b_code_interpreter_setup():
    import IPython
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    ip = IPython.get_ipython()
    if ip is None:
        return

    try:
        import pandas
    except ImportError:
        pandas = None

    def json_value(v):
        # Missing values (NaN, NaT, None) are null: NaN is not JSON, and the kernel would
        # otherwise send it as the string "nan" with a warning on stderr.
        try:
            if pandas.isna(v):
                return None
        except (TypeError, ValueError):
            pass
        if isinstance(v, float) and v in (float("inf"), float("-inf")):
            return str(v)
        if hasattr(v, "isoformat"):
            return v.isoformat()
        return v

    def dataframe_columns(frame):
        columns = frame.to_dict(orient="list")
        return {str(name): [json_value(v) for v in values] for name, values in columns.items()}

    class DataFormatter(BaseFormatter):
        """`e2b/data`: a DataFrame as {column: [values]} (the SDK's Result.data)."""

        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict, str)

    class ChartFormatter(BaseFormatter):
        """`e2b/chart`: a matplotlib figure as E2B chart data (the SDK's Result.chart)."""

        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict, str)

        def __call__(self, obj):
            try:
                from matplotlib.figure import Figure
            except ImportError:
                return super().__call__(obj)
            if isinstance(obj, Figure):
                try:
                    from e2b_charts import chart_figure_to_dict

                    return chart_figure_to_dict(obj) or None
                except Exception:  # noqa: BLE001 - a chart that cannot be read is just a PNG
                    return None
            return super().__call__(obj)

    data = DataFormatter(parent=ip.display_formatter)
    if pandas is not None:
        data.for_type(pandas.DataFrame, dataframe_columns)
    ip.display_formatter.formatters["e2b/data"] = data
    ip.display_formatter.formatters["e2b/chart"] = ChartFormatter(parent=ip.display_formatter)

    try:  # warm the plotting stack: the first plot of a sandbox should not pay for it
        import matplotlib.pyplot  # noqa: F401
        import e2b_charts  # noqa: F401
    except ImportError:
        pass


_e2b_code_interpreter_setup()
del _e2b_code_interpreter_setup
