from django.db import migrations, models


class Migration(migrations.Migration):
    """Outcomes are error codes from challenges.errors.Code: a new code needs no migration."""

    dependencies = [("challenges", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="challengeattempt",
            name="outcome",
            field=models.CharField(db_index=True, max_length=32),
        ),
    ]
