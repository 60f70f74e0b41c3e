"""The token budget in a real fit, with the fixtures hookloop's pytest plugin provides
(`make_engine`, `load_plugin`): nothing here comes from hookloop's own test suite."""

from hookloop import hookimpl


def test_budget_stops_the_run(make_engine, load_plugin):
    budget = load_plugin("token_budget", max_tokens=100)
    state = make_engine(plugins=[budget]).fit(max_steps=50)
    assert state.should_stop == "token budget of 100 tokens reached"
    assert budget.exhausted_at == state.step  # the plugin's own state, read directly


def test_no_budget_only_reports(make_engine, load_plugin):
    state = make_engine(plugins=[load_plugin("token_budget")]).fit(max_steps=5)
    assert state.step == 5 and state.should_stop is None


def test_other_plugins_hear_the_budget_run_out(make_engine, load_plugin):
    class Listener:
        name = "listener"
        heard: list[int] = []

        @hookimpl
        def token_budget_exhausted(self, state, budget):
            self.heard.append(budget)

    budget, listener = load_plugin("token_budget", max_tokens=100), Listener()
    make_engine(plugins=[budget, listener]).fit(max_steps=50)
    assert listener.heard == [100]
